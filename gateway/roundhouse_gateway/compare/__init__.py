"""A/B and shadow comparisons: each arm's and each shadow's figures over a window, how often a shadow's
answer agrees with the primary's, and the verdict a person reads (GET /admin/compare, the Compare tab)."""
