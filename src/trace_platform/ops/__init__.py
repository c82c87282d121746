"""One operations layer for people: the CLI verbs (and the coming `/v1/*` routes) call these
functions; neither holds SQL nor business rules of its own."""
