"""cinder-api as a WSGI application for gunicorn (``byok cinder up``; runs in .venv-openstack).

Cinder's own ``cinder.wsgi.wsgi.initialize_application`` reads its configuration from
``sys.argv``, which under gunicorn holds gunicorn's arguments; this does the same steps with the
config files named in ``$BYOK_CINDER_CONFIG_FILES`` (colon-separated). The paste pipeline
(``api-paste.ini`` of the patched tree, ``keystonemiddleware.auth_token`` in front) and
everything below it are Cinder's.
"""

from __future__ import annotations

import os

from cinder import coordination, objects, rpc, service, version
from cinder.common import config, constants
from cinder.wsgi import wsgi as cinder_wsgi
from oslo_log import log as logging
from oslo_reports import guru_meditation_report as gmr
from oslo_reports import opts as gmr_opts
from oslo_service import wsgi

CONF = cinder_wsgi.CONF


def build():
    objects.register_all()
    gmr_opts.set_defaults(CONF)
    args = []
    for path in filter(None, os.environ["BYOK_CINDER_CONFIG_FILES"].split(":")):
        args += ["--config-file", path]
    CONF(args, project="cinder", version=version.version_string(), default_config_files=[])
    logging.setup(CONF, "cinder")
    config.set_middleware_defaults()
    gmr.TextGuruMeditation.setup_autorun(version, conf=CONF, setup_signal=False)
    coordination.COORDINATOR.start()
    rpc.init(CONF)
    service.setup_profiler(constants.API_BINARY, CONF.host)
    return wsgi.Loader(CONF).load_app(name="osapi_volume")


application = build()
