from lorafit.cli import entry

entry()
