"""Models in and out of the store: importers for models trained elsewhere, exporters."""
