"""The original KPOD entry point: python main.py --mode <stage> --dataset gsm8k --model google/flan-t5-large"""

import sys

from kpod.cli import main_original

if __name__ == "__main__":
    sys.exit(main_original())
