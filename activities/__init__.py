"""Activities: every side effect of a journey (database, files, email, HTTP)."""
