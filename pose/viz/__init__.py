"""Pictures: skeletons over images, heatmap and attention overlays, plots."""
