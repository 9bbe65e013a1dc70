{
  "targets": [
    {
      "target_name": "ferry_native",
      "sources": ["ferry_native.c"],
      "cflags": ["-O2", "-Wall"]
    }
  ]
}
