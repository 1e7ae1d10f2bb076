"""The front door (`front_door:`): a login page with the lab account's password (PAM), sessions, and
the endpoint nginx's auth_request asks on every proxied request. See door.py."""
