#version 330
// Full-screen triangle strip; the fragment shader looks up the tile map.
in vec2 in_pos;
void main() { gl_Position = vec4(in_pos, 0.0, 1.0); }
