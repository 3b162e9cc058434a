"""ex2 report: tables, plots and an HTML report across run folders (stage), the page (html), the statistics (stats) and the paired differences with their intervals (compare)."""
