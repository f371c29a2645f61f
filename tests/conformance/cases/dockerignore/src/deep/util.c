src/deep/util.c
