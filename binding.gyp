{
  "targets": [
    {
      "target_name": "guestmem",
      "sources": [
        "native/addon.cc",
        "native/kvm.cc",
        "native/confidential_vm.cc",
        "native/memory.cc",
        "native/mapping.cc",
        "native/vfio_type1.cc",
        "native/iommufd.cc",
        "native/vfio_device.cc",
        "native/vcpu.cc",
        "native/vcpu_thread.cc",
        "native/fault_injection.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "cflags_cc": ["-std=c++20", "-fexceptions", "-fvisibility=hidden", "-Wall", "-Wextra", "-Werror"],
      "conditions": [
        ["OS!='linux'", { "type": "none" }]
      ]
    }
  ]
}
