"""Allow `python -m audit_service` (used by the dev stack and the acceptance tests)."""

from audit_service.cli import main

main()
