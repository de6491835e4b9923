"""Reading videos at a fixed FPS, the paper's spatial views, and writing test videos."""
