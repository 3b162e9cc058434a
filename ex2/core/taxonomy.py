"""What ``ex2 inspect`` says a description is: its category and the attribute it is about.

EX2's question splits descriptions into ``spurious`` (adds no knowledge of the concept) and
informative ones; ex2 further splits the informative into ``visual`` and ``non_visual`` and names the
attribute. Every stage reads these names from here.
"""

from __future__ import annotations

CATEGORIES = ("spurious", "visual", "non_visual")
UNPARSED = "unparsed"  # the judge's answer could not be read
ALL_CATEGORIES = (*CATEGORIES, UNPARSED)  # what an inspection record can carry
INFORMATIVE = "informative"  # visual or non_visual: a filter `ex2 classify --categories` also takes
FILTER_CATEGORIES = (*CATEGORIES, INFORMATIVE)

VISUAL_ATTRIBUTES = ("color", "shape", "size", "pattern", "texture", "parts")
NON_VISUAL_ATTRIBUTES = ("habitat", "behavior", "diet", "origin", "history", "use", "other")
ATTRIBUTES = {"spurious": ("none",), "visual": VISUAL_ATTRIBUTES, "non_visual": NON_VISUAL_ATTRIBUTES}
INFORMATIVE_ATTRIBUTES = VISUAL_ATTRIBUTES + NON_VISUAL_ATTRIBUTES
