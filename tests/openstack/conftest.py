"""Repeat the openstack tier's counts at the end of the session, where CI logs are read."""


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    from tests.openstack.test_openstack_tier import LINES

    if LINES:
        terminalreporter.section("byok openstack tier (patched vs unpatched Cinder, Nova)")
        for line in LINES:
            if "passed" in line or "NEW FAILURE" in line or "record" in line or "both" in line:
                terminalreporter.write_line(line)
