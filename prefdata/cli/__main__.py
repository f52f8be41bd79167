"""`python -m prefdata.cli`: what the --dp launcher and the tests start as a child process."""

from prefdata.cli import main

main()
