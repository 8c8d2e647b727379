"""``python -m keras_secure_cli``: the ``keras-secure`` command."""

import sys

from keras_secure_cli import main

sys.exit(main())
