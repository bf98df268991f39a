"""Barbican WSGI application for gunicorn.

Barbican's own entry point hard-codes ``/etc/barbican/barbican-api-paste.ini``; this one loads
the paste file named by ``BYOK_BARBICAN_PASTE``. ``barbican.conf`` is found through oslo.config's
default search path (``$HOME/.barbican/barbican.conf``), which is why the server runs with
``HOME`` pointing into the stack's state directory.
"""

import os

from barbican.api import app as _app  # noqa: F401  (registers options)
from barbican.common import config as _config  # noqa: F401  (parses ~/.barbican/barbican.conf)
from paste import deploy

application = deploy.loadapp("config:" + os.environ["BYOK_BARBICAN_PASTE"], name="main")
