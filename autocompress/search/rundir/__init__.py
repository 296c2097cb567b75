"""A search's run directory: what the end of a search writes (`summary`: front, pick, `pareto.md`,
`summary.json`), its plan files and their repair (`plan_files`), the identity of what was searched
(`identity`), and the reader that `report`, `export` and a resume use (`reader`)."""
