from data_gen.reference_train.cli import main

main()
