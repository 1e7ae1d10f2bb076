"""The front door's pages: login, logout and "signed in as". Plain HTML forms: no JavaScript, no
outside resources, labels on every field, messages in a live region a screen reader announces."""

from __future__ import annotations

from html import escape

CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
HEADERS = [("Content-Type", "text/html; charset=utf-8"), ("Content-Security-Policy", CSP),
           ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "same-origin")]

_STYLE = """\
body{font:1.1rem/1.5 system-ui,sans-serif;max-width:26rem;margin:4rem auto;padding:0 1rem;color:#111}
label{display:block;margin-top:1rem;font-weight:600}
input{font:inherit;width:100%;box-sizing:border-box;padding:.5rem;border:2px solid #555;border-radius:4px}
input:focus,button:focus{outline:3px solid #1a5fb4;outline-offset:2px}
button{font:inherit;margin-top:1.5rem;padding:.5rem 1.5rem;border:2px solid #1a5fb4;border-radius:4px;
background:#1a5fb4;color:#fff;cursor:pointer}
.message{border-left:4px solid #c01c28;padding:.5rem 1rem;background:#fdecea}"""


def _page(title: str, body: str) -> bytes:
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{escape(title)}</title>\n<style>\n{_STYLE}\n</style>\n</head>\n"
            f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n").encode()


def login(csrf: str, next_url: str = "", user: str = "", message: str = "") -> bytes:
    alert = (f'<p class="message" id="message" role="alert">{escape(message)}</p>\n' if message
             else '<p id="message" role="status"></p>\n')
    return _page("Log in", f"""<h1>Log in</h1>
<p>Your user name and password on this machine open your own Jupyter server.</p>
{alert}<form method="post" action="/_notebookd/login">
<input type="hidden" name="_csrf" value="{escape(csrf)}">
<input type="hidden" name="next" value="{escape(next_url)}">
<label for="user">User name</label>
<input id="user" name="user" type="text" autocomplete="username" autocapitalize="none" spellcheck="false"
 required value="{escape(user)}"{'' if user else ' autofocus'}>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required
 {'autofocus' if user else ''}>
<button type="submit">Log in</button>
</form>""")


def logout(user: str, csrf: str) -> bytes:
    return _page("Log out", f"""<h1>Log out</h1>
<p>Signed in as {escape(user)}. Logging out ends this session; your server and its kernels keep running.</p>
{_logout_form(csrf)}""")


def _logout_form(csrf: str) -> str:
    return f"""<form method="post" action="/_notebookd/logout">
<input type="hidden" name="_csrf" value="{escape(csrf)}">
<button type="submit">Log out</button>
</form>"""


def message(title: str, text: str) -> bytes:
    return _page(title, f'<h1>{escape(title)}</h1>\n<p role="alert">{escape(text)}</p>\n'
                        '<p><a href="/">Log in</a></p>')
