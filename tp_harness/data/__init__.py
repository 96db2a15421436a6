"""Data formats (the ``tp_register_data_formats`` plugins) and seeded disjoint splits of a spec's rows."""
