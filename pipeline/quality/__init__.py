"""Label-free quality of any mask stage: motion-semantic alignment (IMAS) and its report."""
