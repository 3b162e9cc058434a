"""ex2 report: tables, plots and an HTML report across run folders: the stage (stage), what it reads
from run folders (runs), the tables (tables), the page (html) and the statistics (stats)."""
