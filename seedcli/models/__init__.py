"""Model families: aliases, loading, adapter targets, templates and tiny offline builders."""
