"""What every feature shares: settings, the database, tables, errors, auth, privacy, CRSs.

Nothing here knows about HTTP; each module is one topic.
"""
