"""The store's database engines: SQLite (``sqlite``) and PostgreSQL (``postgres``), and the SQL rules they share (``sql``)."""
