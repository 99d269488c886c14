"""Reports written from a table's records (Markdown sections beside ``table.md``'s grid)."""
