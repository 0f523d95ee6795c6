"""Same as the `clip-unlearn-collect` console command (for use from a source checkout): see clip_unlearn.collect."""

from clip_unlearn.collect import main

if __name__ == "__main__":
    main()
