{
  # -Werror only where a warning should stop the build: development and CI set
  # GUESTMEM_WERROR=1 (npm run build:native, npm run prebuild, .ci/run). A user's fallback
  # compile (`npm install` on a host no prebuilt binary fits) must not fail because a newer
  # compiler found something new to warn about.
  "variables": {
    "guestmem_werror%": "<!(node -p \"process.env.GUESTMEM_WERROR === '1' ? 1 : 0\")"
  },
  "targets": [
    {
      "target_name": "guestmem",
      "sources": [
        "native/addon.cc",
        "native/kvm.cc",
        "native/confidential_vm.cc",
        "native/confidential_launch.cc",
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
      # NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS: a Worker terminated while a call of ours
      # throws (an errno error, say) has an environment that can no longer take a JS
      # exception; without it node-addon-api throws again from its catch handler and the
      # whole process aborts (test/unit/worker-terminate.test.ts).
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED", "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "cflags_cc": ["-std=c++20", "-fexceptions", "-fvisibility=hidden", "-Wall", "-Wextra"],
      "conditions": [
        ["OS!='linux'", { "type": "none" }],
        ["guestmem_werror==1", { "cflags_cc": ["-Werror"] }]
      ]
    }
  ]
}
