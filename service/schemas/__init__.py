"""Request and response models, one module per area; requests reject unknown fields."""
