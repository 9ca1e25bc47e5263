"""A study: a grid of arms x scales x seeds x lrs run as hashed, resumable steps (``synthimg study``)."""
