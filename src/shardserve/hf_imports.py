"""One lock for imports from transformers on the server's loading threads.

Models load on threads of their own (several at once when a server starts with several), and
two first imports of a lazy transformers name at once can fail: "cannot import name
'AutoTokenizer' from 'transformers'". Every such import takes this lock."""

import threading

TRANSFORMERS_IMPORT = threading.Lock()
