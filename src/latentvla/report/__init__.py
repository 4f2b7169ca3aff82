"""``latentvla report``: one self-contained HTML report of run directories and comparison tables."""
