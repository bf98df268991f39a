"""castellan backend ``byok`` (entry point in ``castellan.drivers``), shaped like castellan's
own ``key_manager`` package. Built on :mod:`byok.keys`; knows nothing of LUKS."""
