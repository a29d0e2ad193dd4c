// segmind-sim placeholder: the emulator is being written.
#include <cstdio>
int main() {
    std::fputs("segmind-sim: not built yet\n", stderr);
    return 1;
}
