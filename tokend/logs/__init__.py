"""Log output: escaping of client-supplied text, the text line format and the JSON
line format."""
