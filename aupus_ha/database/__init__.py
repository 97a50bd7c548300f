"""PostgreSQL plumbing shared by every part: connections, errors, migrations, named queries."""
