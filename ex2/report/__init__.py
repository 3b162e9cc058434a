"""ex2 report: tables, plots and an HTML report across run folders: the stage (stage), what it reads
from run folders (runs), the tables (tables), the page (html), the statistics (stats) and the paired
differences with their intervals (compare)."""
