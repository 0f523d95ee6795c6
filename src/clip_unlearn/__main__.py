from clip_unlearn.cli import main

main()
