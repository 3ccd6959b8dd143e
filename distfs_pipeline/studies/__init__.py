"""Policy studies: fault scenarios on scratch stores, the study metrics of one job, and the
multirun sweep summary (tables and plots). The top layer below the entry points.
"""
