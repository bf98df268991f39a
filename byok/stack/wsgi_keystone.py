"""Keystone WSGI application for gunicorn.

``keystone.server.configure()`` parses ``sys.argv`` with oslo.config, so gunicorn's own arguments
make every worker exit with "unrecognized arguments" while the master keeps the port open. The
arguments are hidden while keystone imports. The config file comes from OS_KEYSTONE_CONFIG_FILES.
"""

import sys

_saved = sys.argv
sys.argv = [_saved[0]]
try:
    from keystone.wsgi.api import application  # noqa: F401
finally:
    sys.argv = _saved
