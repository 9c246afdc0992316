"""``billing dashboard``: a read-only local web app over the store and the catalog."""
