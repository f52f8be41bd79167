"""One home for the run's storage: the record schemas and content keys (`records`), the run directory and its
shards (`store`), the streaming readers (`groups`), the prompt files (`prompts`), and the process lifecycle that
keeps a stage's files whole when it is stopped (`interrupts`)."""
