# CMake toolchain file: 64-bit Arm Linux (aarch64-linux-gnu) from an x86_64 Debian/Ubuntu host, multiarch style.
#
#   cmake -S device/native -B build/native-aarch64 \
#         -DCMAKE_TOOLCHAIN_FILE=device/native/cross/aarch64-linux-gnu.cmake \
#         -DCMAKE_PREFIX_PATH=<the aarch64 executorch wheel, unpacked>/executorch
#
# (device/native/cross/build-aarch64.sh does this, and fetches the wheel.) Debian packages: g++-aarch64-linux-gnu
# (compiler and the target glibc/libstdc++ under /usr/aarch64-linux-gnu) and, after `dpkg --add-architecture arm64`,
# libssl-dev:arm64 (libcrypto under /usr/lib/aarch64-linux-gnu). nlohmann-json3-dev is header-only and serves both.
#
# No sysroot and no CMAKE_FIND_ROOT_PATH: Debian's cross compiler already searches /usr/aarch64-linux-gnu and the
# multiarch folders /usr/{include,lib}/aarch64-linux-gnu, and CMAKE_LIBRARY_ARCHITECTURE makes find_library look in
# lib/aarch64-linux-gnu. Re-rooting would hide the arch-independent nlohmann_json package under /usr/share/cmake.
# What keeps the host's x86_64 libraries out is the ignore list and pkg-config's search path below.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(LSC4REC_CROSS_TRIPLE aarch64-linux-gnu)
set(CMAKE_C_COMPILER ${LSC4REC_CROSS_TRIPLE}-gcc)
set(CMAKE_CXX_COMPILER ${LSC4REC_CROSS_TRIPLE}-g++)
set(CMAKE_LIBRARY_ARCHITECTURE ${LSC4REC_CROSS_TRIPLE})

# Never link a host library by mistake (FindOpenSSL takes pkg-config's answer as a hint, searched first).
set(CMAKE_IGNORE_PATH /usr/lib/x86_64-linux-gnu /lib/x86_64-linux-gnu /usr/include/x86_64-linux-gnu)
set(ENV{PKG_CONFIG_LIBDIR} /usr/lib/${LSC4REC_CROSS_TRIPLE}/pkgconfig:/usr/share/pkgconfig)
set(ENV{PKG_CONFIG_PATH} "")

# try_run and ctest run target programs through qemu-user (Debian: qemu-user), with the cross glibc as its root.
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L /usr/${LSC4REC_CROSS_TRIPLE})
