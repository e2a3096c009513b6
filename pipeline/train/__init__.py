"""Training scaffold shared by every trainer (OCLR, selector, corrector, MAMP): resumable loop,
schedules, CSV curves, exports. Components keep their own ``train.py`` next to their model."""
