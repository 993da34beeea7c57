from reference_mllm.train.cli import main

main()
