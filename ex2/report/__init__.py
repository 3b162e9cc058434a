"""ex2 report: tables, plots and an HTML report across run folders (stage), the page (html) and the statistics (stats)."""
