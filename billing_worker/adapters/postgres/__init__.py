"""PostgreSQL through SQLAlchemy 2 Core on psycopg 3."""
