"""`python -m handler.notify [report.json] [--html]`: preview a report's Telegram summary."""

from handler.notify.html import main

raise SystemExit(main())
