from hypothesis import settings

# Timing belongs in `rcnn bench`, not in tests: on a loaded 2-core machine Hypothesis's
# default 200 ms deadline fails correct code.
settings.register_profile("rcnn", deadline=None)
settings.load_profile("rcnn")
