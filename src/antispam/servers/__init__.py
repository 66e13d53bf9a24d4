"""MTA integrations: spamd, milter, SMTP filter and rspamd-HTTP servers over one Engine.

``antispam serve spamd|milter|smtp|rspamd-http`` runs one of them (see ``cli.py``
in this package); embedders can build the server classes directly.
"""
